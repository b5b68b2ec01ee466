"""How the train stage spreads over devices: all GPUs of one machine, or several machines.

The cluster itself (who is who, who is the chief) is cluster.py's.
"""

import signal

import tensorflow as tf


def make_strategy(config: dict | None) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy on a cluster (all GPUs of every machine), MirroredStrategy
    over several GPUs of one machine, else the default strategy.

    Call it before anything else touches TensorFlow devices: a cluster's collective ops can
    only be set up before TensorFlow initializes them. On a cluster it returns once every
    task has started.
    """
    if config is None:
        if len(tf.config.list_logical_devices("GPU")) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(config["cluster"]),
        task_type=config["task"]["type"],
        task_id=config["task"]["index"],
        num_accelerators={"GPU": len(tf.config.list_physical_devices("GPU"))},
        rpc_layer="grpc",
    )
    strategy = KerasMultiWorkerStrategy(cluster_resolver=resolver)
    # Its coordination service replaced the SIGTERM handler with one that only takes note (for
    # TensorFlow's own preemption handling, unused here): give the signal back to the stage.
    handler = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, handler if handler is not None else signal.SIG_DFL)
    return strategy


class KerasMultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy that Keras 3's `fit` can use.

    On several machines `fit` asks the strategy to reduce a whole (nested) batch while it
    builds the model, and each scalar metric along axis 0; TensorFlow's `reduce` takes a single
    value and has no axis 0 in a scalar, so `fit` fails. This reduces each value of a nest,
    scalars across replicas only.
    """

    def reduce(self, reduce_op, value, axis):
        def reduce_one(one):
            rank = self.experimental_local_results(one)[0].shape.rank
            return super(KerasMultiWorkerStrategy, self).reduce(
                reduce_op, one, axis if rank else None
            )

        return tf.nest.map_structure(reduce_one, value)


def shard_by_data(data: tf.data.Dataset) -> tf.data.Dataset:
    """Let each worker keep its own part of every global batch, whatever the number of shard
    files (TensorFlow's default shards by file, and with fewer files than workers it hands
    every worker the same batches). Every worker reads the same seeded stream, so together
    they train on what one machine would with the global batch."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.with_options(options)
