pytest_plugins = ["tests.vmguest"]
