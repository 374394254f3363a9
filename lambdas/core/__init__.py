"""Plain, typed functions shared by the Lambda handlers, the trainer and the local cloud."""
