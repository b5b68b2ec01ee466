"""Google Cloud and Vertex AI as the stages meet them: Cloud Storage, the cluster a training job
runs on, and the Kubeflow executor protocol of a pipeline step.
"""
