"""The sandbox's tabular datasets, from installed packages (nothing is downloaded).

scikit-learn ships diabetes, breast cancer, digits, iris, wine and linnerud. It dropped
`load_boston` in 1.2, so Boston housing comes from mlxtend (`mlxtend.data.boston_housing_data`,
the same 506 x 13 table), with a description written in the style of scikit-learn's DESCR.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

BOSTON_DESCR = """.. _boston_dataset:

Boston house prices dataset
---------------------------

**Data Set Characteristics:**

    :Number of Instances: 506

    :Number of Attributes: 13 numeric/categorical predictive. Median Value (attribute 14) is usually the target.

    :Attribute Information (in order):
        - CRIM     per capita crime rate by town
        - ZN       proportion of residential land zoned for lots over 25,000 sq.ft.
        - INDUS    proportion of non-retail business acres per town
        - CHAS     Charles River dummy variable (= 1 if tract bounds river; 0 otherwise)
        - NOX      nitric oxides concentration (parts per 10 million)
        - RM       average number of rooms per dwelling
        - AGE      proportion of owner-occupied units built prior to 1940
        - DIS      weighted distances to five Boston employment centres
        - RAD      index of accessibility to radial highways
        - TAX      full-value property-tax rate per $10,000
        - PTRATIO  pupil-teacher ratio by town
        - B        1000(Bk - 0.63)^2 where Bk is the proportion of black people by town
        - LSTAT    % lower status of the population
        - MEDV     Median value of owner-occupied homes in $1000's

    :Missing Attribute Values: None

    :Creator: Harrison, D. and Rubinfeld, D.L.

This is a copy of UCI ML housing dataset.
https://archive.ics.uci.edu/ml/machine-learning-databases/housing/

This dataset was taken from the StatLib library which is maintained at Carnegie Mellon University.

The Boston house-price data of Harrison, D. and Rubinfeld, D.L. 'Hedonic
prices and the demand for clean air', J. Environ. Economics & Management,
vol.5, 81-102, 1978.   Used in Belsley, Kuh & Welsch, 'Regression diagnostics
...', Wiley, 1980.   N.B. Various transformations are used in the table on
pages 244-261 of the latter.

The Boston house-price data has been used in many machine learning papers that address regression
problems.

Here the table is loaded from mlxtend (`mlxtend.data.boston_housing_data`): scikit-learn
removed `load_boston` in version 1.2, citing the ethical problems of the B attribute, which
encodes an assumption about racial self-segregation. Use it for demonstrations only.

.. topic:: References

   - Belsley, Kuh & Welsch, 'Regression diagnostics: Identifying Influential Data and Sources of Collinearity', Wiley, 1980. 244-261.
   - Quinlan,R. (1993). Combining Instance-Based and Model-Based Learning. In Proceedings on the Tenth International Conference of Machine Learning, 236-243, University of Massachusetts, Amherst. Morgan Kaufmann.
"""


@dataclass
class Table:
    """A dataset as the sandbox uses it: arrays, search tags and the DESCR text."""
    name: str
    data: np.ndarray
    target: np.ndarray
    tags: tuple[str, ...]
    description: str


def _require(package: str, pip_name: str, what: str):
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ImportError(f"{what} needs the {pip_name} package, which is not installed: "
                          f"pip install {pip_name} (or pip install 'fedmq[data]'). "
                          f"fedmq never downloads data.") from None


def boston() -> Table:
    data = _require("mlxtend.data", "mlxtend", "the Boston housing dataset")
    X, y = data.boston_housing_data()
    return Table("boston", X, y, ("#boston", "#housing", "#boston_housing"), BOSTON_DESCR)


#: (loader in sklearn.datasets, sandbox name, extra tags); PySyft tagged only boston and
#: diabetes by name, fedmq tags every dataset with #<name> too
SKLEARN = [("load_diabetes", "diabetes", ("#diabetes",)),
           ("load_breast_cancer", "breast_cancer", ("#breast_cancer",)),
           ("load_digits", "digits", ("#digits",)),
           ("load_iris", "iris", ("#iris",)),
           ("load_wine", "wine", ("#wine",)),
           ("load_linnerud", "linnerud", ("#linnerud",))]


def sklearn_table(loader: str, name: str, tags: tuple[str, ...]) -> Table:
    datasets = _require("sklearn.datasets", "scikit-learn", f"the {name} dataset")
    bunch = getattr(datasets, loader)()
    return Table(name, bunch["data"], bunch["target"], tags, bunch["DESCR"])
