"""A REST service for TensorFlow SavedModel image classifiers; see README.md."""

from service.app import create_app

__all__ = ["create_app"]
