from setuptools import setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="sockssuite",
    version="0.1.0",
    description="SOCKS proxy suite on Twisted: sockd with sockd.conf access control, identd checks, BIND, clients",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    # twisted.plugins is a namespace-style folder without __init__.py (shipping one
    # would overwrite Twisted's own), so package discovery skips it: name it here.
    packages=["sockssuite", "sockssuite.wire", "twisted.plugins"],
    package_data={"twisted.plugins": ["sockssuite_plugin.py"]},
    install_requires=["Twisted>=24.7", "bcrypt>=4"],
    extras_require={
        "test": [
            "hypothesis>=6",
            "pytest>=8",
            "pytest-twisted>=1.14",
            "PySocks>=1.7",
            "python-socks>=2.4",
            "pyftpdlib>=1.5",
            "prometheus-client>=0.17",
            "matplotlib>=3.5",
            "Twisted[tls]",  # pyOpenSSL and service_identity: a SOCKS port behind TLS (ssl: endpoints)
        ],
        "metrics": ["prometheus-client>=0.17"],
        "plot": ["matplotlib>=3.5"],
        "docs": ["sphinx>=7"],
    },
    entry_points={"console_scripts": ["sockssuite = sockssuite.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: Proxy Servers",
    ],
)
