"""The headless provider agent: the code that runs on a provider's machine. It imports no Django (tested), only
`inference` and `transport.protocol`, so a provider needs neither the server's code nor its settings to run it."""
