"""``python -m trainer``: one training run configured by environment variables (see README.md)."""

from trainer.run import main

raise SystemExit(main())
