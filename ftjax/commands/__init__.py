"""One module per `ftjax` subcommand: add_arguments(parser) and run(args)."""
