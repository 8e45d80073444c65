"""pydantic contracts between stixbus stages and with the outside world."""
