"""CLI: python -m localcluster bins|up|down|kubeconfig."""

from localcluster.cli import main

raise SystemExit(main())
