"""Write tests/data/lmertest_{carrots,ham}.csv from lmerTest 3.1-3's data/carrots.rda and
data/ham.rda (github.com/runehaubo/lmerTestR, GPL >= 2): the columns the SAS comparisons of
lmerTest's tests/test_compare_sas.R use, read here with the `rdata` package.

    python tests/data/make_lmertest_data.py path/to/lmerTestR/data
"""

import sys
from pathlib import Path

import pandas as pd
import rdata

COLUMNS = {"carrots": ["Consumer", "Frequency", "Income", "Homesize", "Product", "Preference", "sens1", "sens2"],
           "ham": ["Consumer", "Product", "Information", "Gender", "Age", "Informed.liking"]}


def main(source: Path) -> None:
    for name, columns in COLUMNS.items():
        frame = rdata.read_rda(str(source / f"{name}.rda"))[name][columns]
        for column in frame.columns:
            if isinstance(frame[column].dtype, pd.CategoricalDtype):  # R factor levels, '1.0' -> '1'
                frame[column] = frame[column].astype("string").str.replace(r"\.0$", "", regex=True)
        frame.to_csv(Path(__file__).with_name(f"lmertest_{name}.csv"), index=False)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
