"""One file per paper: registered recipes that build data and methods, run them and print tables."""
