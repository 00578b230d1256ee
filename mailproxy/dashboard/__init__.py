"""The browser dashboard under /ui/ (issue 15): sign-in, queue state, rates, bounces."""
