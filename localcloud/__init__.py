"""The local cloud: moto's server plus the drivers moto lacks, built from infra/serverless.yml."""
