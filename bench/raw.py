"""The raw ceiling: the SavedModel called in-process on pre-decoded, pre-prepared batches.

Decoding, preparation and the host->tensor copy all happen before the clock starts, so this is
the most images per second the model itself can do on this machine at each batch size; the
best of them is the ceiling a serving stack is compared with. Runs as its own process so its
TensorFlow runtime does not linger in the benchmark driver.

    python -m bench.raw --model-dir model_repository/cpe_cnn/1 --payload a.tif --batch-sizes 1,8,32
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--payload", type=Path, action="append", required=True)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    parser.add_argument("--duration-s", type=float, default=3.0, help="timed calls per batch size and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import tensorflow as tf

    from service.codecs.images import decode_image
    from service.preprocessing import prepare

    loaded = tf.saved_model.load(str(args.model_dir))
    function = loaded.signatures["serving_default"]
    input_key, spec = next(iter(function.structured_input_signature[1].items()))
    _, height, width, channels = spec.shape.as_list()
    output_key = next(iter(function.structured_outputs))
    prepared = [prepare(decode_image(path.read_bytes()), height, width, channels) for path in args.payload]

    from bench.loadgen import machine_busy_seconds

    busy_started, cpu_started, wall_started = machine_busy_seconds(), time.process_time(), time.perf_counter()
    results: dict[str, dict[str, float | list[float]]] = {}
    for batch_size in (int(size) for size in args.batch_sizes.split(",")):
        rows = [prepared[i % len(prepared)] for i in range(batch_size)]
        batch = tf.constant(np.stack(rows))
        for _ in range(2):  # the first call per shape is slow (oneDNN primitive creation)
            function(**{input_key: batch})[output_key].numpy()
        rates = []
        for _ in range(args.repeats):
            images = 0
            started = time.perf_counter()
            while True:
                function(**{input_key: batch})[output_key].numpy()
                images += batch_size
                elapsed = time.perf_counter() - started
                if elapsed >= args.duration_s and images >= 2 * batch_size:
                    break
            rates.append(images / elapsed)
        results[str(batch_size)] = {"images_per_s": statistics.median(rates), "repeats": rates}
        print(f"raw batch {batch_size}: {statistics.median(rates):.1f} images/s", file=sys.stderr, flush=True)
    best = max(results, key=lambda size: results[size]["images_per_s"])  # type: ignore[arg-type,return-value]
    wall = time.perf_counter() - wall_started
    other = (machine_busy_seconds() - busy_started) - (time.process_time() - cpu_started)
    json.dump({"by_batch_size": results, "best_batch_size": int(best),
               "best_images_per_s": results[best]["images_per_s"],
               "cpu_cores": (time.process_time() - cpu_started) / wall,
               "other_cpu_cores": max(other, 0.0) / wall}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
