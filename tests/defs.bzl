"""`pytest_test`: a py_test that runs its sources through pytest."""

load("@rules_python//python:defs.bzl", "py_test")
load("@pip//:requirements.bzl", "requirement")

def pytest_test(name, srcs, deps = [], data = [], **kwargs):
    py_test(
        name = name,
        srcs = srcs + ["//tests:pytest_main.py"],
        main = "//tests:pytest_main.py",
        args = ["$(rootpath %s)" % s for s in srcs],
        deps = deps + ["//tests:conftest", requirement("pytest")],
        data = data + ["//:pytest_ini"],
        **kwargs
    )
