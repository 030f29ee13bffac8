"""listmill: email-audience data with durable bulk jobs."""
