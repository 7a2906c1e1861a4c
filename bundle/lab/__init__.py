"""Lab scenarios in network namespaces. Stands apart: nothing else imports it but the CLI and tests."""
