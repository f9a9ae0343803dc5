"""What several test modules share: servers, served versions, fixtures."""
