"""The mail-proxy command (main) and its client of a running instance: instances and their data
directories, REST calls over loopback, the tables and prompts of the terminal."""
