"""The paper's experiments: train every method on every task, tabulate beside the published numbers."""
