"""Code the tests share: harnesses, a local Polygon server, a TCP proxy, the reference bars, fixtures."""
