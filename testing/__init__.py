"""Helpers shared by the tests (tests/) and the benchmarks (bench/): the shared poller
(`waiting.until`), the real services they start on loopback (`services`), a local NuGet feed
(`nuget_feed`) and the hostile scripts both run (`scripts`). Nothing here is a test itself."""
