"""engine.data: loading, checking and describing files of bars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.data import (
    DataError,
    MarketData,
    bars_per_year,
    load_market_data,
    resolve_data_path,
    split_indices,
)

HEADER = "date,open,high,low,close,volume"
GOOD = [
    "2020-01-01,10,11,9,10.5,100",
    "2020-01-02,10.5,11.5,10,11,120",
    "2020-01-03,11,12,10.5,11.5,90",
    "2020-01-06,11.5,12,11,11.8,80",
    "2020-01-07,11.8,12.5,11.5,12,110",
]


def write(tmp_path: Path, name: str, rows: list[str], header: str = HEADER) -> str:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return str(path)


def with_row(index: int, row: str) -> list[str]:
    rows = list(GOOD)
    rows[index] = row
    return rows


def error_of(path: str, **kwargs: int) -> str:
    with pytest.raises(DataError) as info:
        load_market_data(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- bad files: each names the file, the line and the column -----------------------------------
@pytest.mark.parametrize("rows,line,column,what", [
    (with_row(2, "2020-01-03,abc,12,10.5,11.5,90"), 4, "open", "non-numeric value 'abc'"),
    (with_row(1, "2020-01-02,10.5,11.5,10,nan,120"), 3, "close", "NaN value 'nan'"),
    (with_row(1, "2020-01-02,10.5,11.5,10,,120"), 3, "close", "empty value"),
    (with_row(3, "2020-01-06,11.5,inf,11,11.8,80"), 5, "high", "infinite value"),
    (with_row(4, "2020-01-07,11.8,12.5,-1.2,12,110"), 6, "low", "non-positive price -1.2"),
    (with_row(0, "2020-01-01,0,11,9,10.5,100"), 2, "open", "non-positive price 0"),
    (with_row(3, "2020-01-02,11.5,12,11,11.8,80"), 5, "date", "time goes backwards"),
    (with_row(2, "2020-13-45,11,12,10.5,11.5,90"), 4, "date", "cannot parse time '2020-13-45'"),
    (with_row(2, "yesterday,11,12,10.5,11.5,90"), 4, "date", "cannot parse time 'yesterday'"),
    (with_row(2, "2020-01-03,11,12,10.5,11.5,-5"), 4, "volume", "negative volume"),
    (with_row(2, ",11,12,10.5,11.5,90"), 4, "date", "empty time"),
])
def test_bad_values_name_file_line_column(tmp_path: Path, rows: list[str], line: int,
                                          column: str, what: str) -> None:
    message = error_of(write(tmp_path, "bad.csv", rows))
    assert message.startswith(f"bad.csv line {line}, column '{column}': ")
    assert what in message


def test_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path, "noclose.csv", [r.rsplit(",", 2)[0] + ",1" for r in GOOD],
                 header="date,open,high,low,volume")
    message = error_of(path)
    assert message.startswith("noclose.csv line 1, column 'close': missing required column")
    assert "found: date, open, high, low, volume" in message


def test_missing_time_column(tmp_path: Path) -> None:
    path = write(tmp_path, "notime.csv", [r.split(",", 1)[1] for r in GOOD],
                 header="open,high,low,close,volume")
    assert "notime.csv line 1, column 'date': missing time column" in error_of(path)


def test_too_few_rows(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "short.csv", GOOD), min_rows=100)
    assert message.startswith("short.csv lines 2-6: only 5 bars")
    assert "need at least 100" in message


def test_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    rows = [*GOOD[:2], "", GOOD[2], "2020-01-06,11.5,12,11,oops,80"]
    message = error_of(write(tmp_path, "blank.csv", rows))
    assert message.startswith("blank.csv line 6, column 'close': non-numeric value 'oops'")


def test_counts_further_bad_rows(tmp_path: Path) -> None:
    rows = [r.replace(",100", ",x").replace(",120", ",y") for r in GOOD]
    assert "(and 1 more row)" in error_of(write(tmp_path, "vol.csv", rows))


def test_several_tickers_rejected(tmp_path: Path) -> None:
    rows = [r + (",AAA" if i < 3 else ",BBB") for i, r in enumerate(GOOD)]
    message = error_of(write(tmp_path, "tics.csv", rows, header=HEADER + ",tic"))
    assert message.startswith("tics.csv line 5, column 'tic': a second ticker 'BBB'")


def test_ambiguous_slashed_dates_rejected(tmp_path: Path) -> None:
    rows = ["01/02/2020,10,11,9,10.5,1", "01/03/2020,10,11,9,10.5,1", "02/03/2020,10,11,9,10.5,1"]
    # 01/02 -> 01/03 -> 02/03 moves forward whether read mm/dd or dd/mm: ambiguous.
    assert "ambiguous dates" in error_of(write(tmp_path, "slash.csv", rows))


def test_slashed_dates_resolved_when_one_reading_parses(tmp_path: Path) -> None:
    rows = ["12/01/2020,10,11,9,10.5,1", "13/01/2020,10,11,9,10.5,1"]  # day 13: dd/mm only
    md = load_market_data(write(tmp_path, "dm.csv", rows))
    assert str(md.timestamps[1])[:10] == "2020-01-13"


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"not parquet at all")
    assert error_of(str(path)).startswith("junk.parquet: cannot read file")


def test_missing_file_lists_places() -> None:
    with pytest.raises(DataError) as info:
        resolve_data_path("no_such_file_here.csv")
    assert "no_such_file_here.csv" in str(info.value) and "looked in" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


# -- good files -------------------------------------------------------------------------------
def test_good_file_columns_case_insensitive_extras_ignored(tmp_path: Path) -> None:
    rows = [r + ",1.0" for r in GOOD]
    path = write(tmp_path, "ok.csv", rows, header="Date,OPEN,High,low,Close,Volume,Adj Close")
    md = load_market_data(path)
    assert md.n == 5 and md.warnings == [] and md.tic is None
    assert md.timestamps.dtype == np.dtype("datetime64[ns]")
    assert md.close.dtype == np.float64 and md.close[-1] == 12.0
    sub = md.slice(1, 3)
    assert isinstance(sub, MarketData) and sub.n == 2 and sub.close[0] == 11.0


def test_missing_volume_is_zero_with_warning(tmp_path: Path) -> None:
    path = write(tmp_path, "novol.csv", [r.rsplit(",", 1)[0] for r in GOOD],
                 header="date,open,high,low,close")
    md = load_market_data(path)
    assert np.all(md.volume == 0) and any("no volume column" in w for w in md.warnings)


def test_adjusted_close_outside_range_kept_with_count(tmp_path: Path) -> None:
    rows = [f"2020-01-{d:02d},10,11,9,{8.5 if d % 2 else 10},1" for d in range(1, 8)]
    md = load_market_data(write(tmp_path, "adj.csv", rows))
    assert md.n == 7
    assert "close outside [low, high] on 4 rows (adjusted close?); kept" in md.warnings


def test_parquet_round_trip(tmp_path: Path) -> None:
    import pandas as pd

    csv = load_market_data(write(tmp_path, "a.csv", GOOD))
    frame = pd.DataFrame({"Timestamp": csv.timestamps, "Open": csv.open, "High": csv.high,
                          "Low": csv.low, "Close": csv.close, "Volume": csv.volume, "tic": "X"})
    frame.to_parquet(tmp_path / "a.parquet")
    pq = load_market_data(str(tmp_path / "a.parquet"))
    assert np.array_equal(pq.timestamps, csv.timestamps) and np.array_equal(pq.close, csv.close)
    assert pq.tic == "X"
    frame.loc[2, "Close"] = -3.0
    frame.to_parquet(tmp_path / "b.parquet")
    assert error_of(str(tmp_path / "b.parquet")).startswith(
        "b.parquet row 3, column 'Close': non-positive price -3")


def test_test_small_counts_duplicates() -> None:
    md = load_market_data("test_small.csv")
    assert md.n == 500 and md.tic == "EURUSD"
    assert "dropped 499 duplicate timestamps; kept the first bar of each" in md.warnings
    assert any("zero-range bars" in w for w in md.warnings)
    assert np.all(np.diff(md.timestamps) > np.timedelta64(0))


def test_eurusd_hourly_dotted_day_first() -> None:
    md = load_market_data("FOREX_EURUSD_1H_ASK.csv")
    assert md.n == 6225
    assert md.timestamps[0] == np.datetime64("2017-01-01T22:00")
    assert md.timestamps[-1] == np.datetime64("2017-12-29T21:00")


def test_googl_daily() -> None:
    md = load_market_data("STOCKS_GOOGL.csv", min_rows=1000)
    assert md.n == 2335 and md.warnings == []
    assert md.timestamps[0] == np.datetime64("2009-05-22")


def test_resolve_data_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_data_path("test_small.csv").endswith("data/test_small.csv")
    assert resolve_data_path("s3://bucket/x.csv") == "s3://bucket/x.csv"
    assert resolve_data_path("gs://b/x.csv") == "gs://b/x.csv"
    own = write(tmp_path, "mine.csv", GOOD)
    assert resolve_data_path("file://" + own) == own
    monkeypatch.setenv("DQL_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert resolve_data_path("mine.csv") == own


# -- splits and calendar -----------------------------------------------------------------------
def test_split_indices() -> None:
    train, val, test = split_indices(1000, 0.65, 0.20)
    assert (train, val, test) == (slice(0, 650), slice(650, 850), slice(850, 1000))
    assert split_indices(10, 0.8, 0.0)[1] == slice(8, 8)
    for bad in [(0.0, 0.2), (0.7, 0.3), (0.9, 0.2), (0.5, -0.1), (1.0, 0.0)]:
        with pytest.raises(ValueError):
            split_indices(1000, *bad)
    with pytest.raises(ValueError, match="too few"):
        split_indices(3, 0.65, 0.20)


def test_bars_per_year() -> None:
    googl = bars_per_year(load_market_data("STOCKS_GOOGL.csv").timestamps)
    assert 245 <= googl <= 255
    # EURUSD hourly trades 24 h x 5 days: ~6,240 a year (6,225 bars over 2017 here).
    fx = bars_per_year(load_market_data("FOREX_EURUSD_1H_ASK.csv").timestamps)
    assert 5_500 <= fx <= 6_600
    minute = bars_per_year(load_market_data("test_small.csv").timestamps)
    assert minute > 100_000
    crypto = np.arange("2020-01-01", "2022-01-01", dtype="datetime64[D]").astype("datetime64[ns]")
    assert 360 <= bars_per_year(crypto) <= 370
    with pytest.raises(ValueError):
        bars_per_year(crypto[:1])
