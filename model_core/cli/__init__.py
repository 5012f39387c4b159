"""``lrbnn`` subcommands."""
