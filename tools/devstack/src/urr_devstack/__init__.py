"""The local stack behind `make up` and the test fixtures."""
