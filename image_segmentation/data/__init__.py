"""ADE20K and the data made from it: the dataset's layout and class list, its download and zip,
the whitelist, the TFRecords, the tf.data input and the photo-to-input rule, and generated data
in the same layout for the demo, tests and benchmarks.
"""
