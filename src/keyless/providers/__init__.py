"""Cloud providers: the only code that talks to AWS, Azure or Google Cloud."""
