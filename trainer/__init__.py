"""The trainer: data table -> tf_keras network -> TensorFlow.js model in S3, behind a quality gate."""
