"""`pytest_test`: a py_test that runs its sources through pytest."""


def pytest_test(name, srcs, deps = [], data = [], **kwargs):
    native.py_test(
        name = name,
        srcs = srcs + ["//tests:pytest_main.py"],
        main = "//tests:pytest_main.py",
        args = ["$(rootpath %s)" % s for s in srcs],
        deps = deps + ["//tests:conftest"],
        data = data + ["//:pytest_ini"],
        **kwargs
    )
