"""`paradl-tf bench`: every method measured against one device and hand-written tf.distribute, in one run.

An application built on the library, with its own extra (`pip install paradl_tf[bench]`): the methods and
the runner (`runner`), the process that times one method (`worker`), the hand-written references
(`reference`, which must not import paradl_tf's training code) and the report with its plots (`report`)."""
