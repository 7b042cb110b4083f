"""Synthetic CPE data, the paper CNN, and the train-and-export script for model_repository/."""
