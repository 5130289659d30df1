"""Model parallel: the placement plan (`placement`, pure: layers and device names in, stages out) and the
placed Keras model with its micro-batch pipeline (`placed`)."""
