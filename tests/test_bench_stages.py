"""bench/stages.py: how sampled stacks become stages and how each thread's CPU is split."""

from __future__ import annotations

from collections import Counter

from bench.stages import NATIVE, OTHER, WAIT, classify, split_cpu

REQUEST = ("thread (11): ;Thread.run (threading.py:982);ThreadWorker.handle (gunicorn/workers/gthread.py:280);"
           "Flask.__call__ (flask/app.py:1536);predict (service/api/predict.py:81)")


def test_a_frame_of_a_stage_decides_and_log_outranks_what_called_it() -> None:
    assert classify(REQUEST + ";decode_image (service/codecs/images.py:60)") == "decode"
    assert classify(REQUEST + ";info (logging/__init__.py:1489);dumps (json/__init__.py:231)") == "log"
    assert classify(REQUEST + ";Pipeline.run (service/pipeline.py:170);Condition.wait (threading.py:331)") == WAIT
    assert classify(REQUEST) == OTHER  # Flask and the view's own glue
    assert classify("thread (12): ;ThreadWorker.run (gunicorn/workers/gthread.py:220)") != OTHER  # no Flask: I/O


def test_each_threads_cpu_is_split_in_its_own_samples_proportions() -> None:
    samples = {1: Counter({"decode": 3, "log": 1}), 2: Counter({"model": 2})}
    cpu = {1: 4.0, 2: 1.0, 3: 0.5, 4: 2.0}  # 3: a Python thread never sampled; 4: a TensorFlow pool thread
    split = split_cpu(samples, cpu, python_tids={1, 2, 3})
    assert split["decode"] == 3.0 and split["log"] == 1.0 and split["model"] == 1.0
    assert split[OTHER] == 0.5 and split[NATIVE] == 2.0
    assert sum(split.values()) == sum(cpu.values())
