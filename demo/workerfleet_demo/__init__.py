"""The WorkerFleet demo: a small shop app in three releases, and the driver behind `make demo`."""
