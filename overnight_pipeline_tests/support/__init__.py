"""What the tests and the benchmarks share: plain functions and classes, never fixtures
(those stay in the conftests). Nothing here imports a conftest, a test module or bench/."""
