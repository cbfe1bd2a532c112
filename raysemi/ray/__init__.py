"""The only package that imports ray: Ray Data streams, the TorchTrainer driver, (later) Tune."""
