"""Builders, each a short function from a typed config section to a TensorFlow/Keras object: logical devices,
the tf.distribute strategy, which Keras runs, the tf.data pipelines, the model, its precision, checkpoints."""
