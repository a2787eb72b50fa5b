"""Training: the LightningModule, exports, distributed helpers, callbacks, checkpoint I/O, config checks."""
