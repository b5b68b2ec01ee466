"""The Kubeflow pipeline: definition, compile, submit to Vertex AI, publish, run locally."""
