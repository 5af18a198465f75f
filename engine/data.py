"""Market data: load a file of bars, check it, say exactly what is wrong with a bad one.

A data file is a CSV or Parquet table of bars with a time column (``date``, ``time``,
``timestamp`` or ``datetime``), ``open``, ``high``, ``low``, ``close``, an optional ``volume`` and
an optional ``tic``; names are matched case-insensitively and extra columns (``Adj Close``) are
ignored. A file either loads completely or not at all: every problem that makes the bars unusable
raises :class:`DataError` with a one-line message naming the file, the line (as an editor shows
it, header = line 1; Parquet files say ``row`` instead, 1-based), the column and what to do.
Vendor quirks that do not make the bars unusable (duplicate timestamps, close outside the bar's
range, flat bars) are accepted and counted in :attr:`MarketData.warnings` for the caller to log.

Module top level imports only the standard library and numpy: the control center imports this
module on its fast path. pandas is imported inside :func:`load_market_data`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from providers import layout as paths

TIME_COLUMNS = ("timestamp", "datetime", "date", "time")
PRICE_COLUMNS = ("open", "high", "low", "close")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
URI_SCHEMES = paths.URI_SCHEMES
NAN_WORDS = frozenset({"nan", "na", "n/a", "null", "none", "#n/a", "-nan"})

# Explicit time formats; a column must parse completely under one of them (no guessing per row).
# Dotted dates are always day-first (``01.02.2017`` is 1 February, as in Dukascopy exports).
# Slashed dates are tried both ways (mm/dd and dd/mm); when both parse and disagree, the file is
# rejected as ambiguous unless only one reading keeps time moving forward.
_ISO = "ISO8601"
_TIME_FORMATS = (
    _ISO,
    "%d.%m.%Y %H:%M:%S.%f", "%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%d.%m.%Y",
    "%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y/%m/%d",
    "%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M", "%m/%d/%Y",
    "%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%d/%m/%Y",
    "%Y%m%d %H:%M:%S", "%Y%m%d %H%M%S", "%Y%m%d",
)
_TIME_HINT = "use ISO 8601 like 2017-01-31 22:00:00, or dd.mm.yyyy HH:MM:SS"


class DataError(ValueError):
    """A data file that cannot be used; the message is one line: where, what, and what to do."""


class DataFileMissing(DataError, FileNotFoundError):
    """The named data file is in none of the places searched (also a FileNotFoundError)."""


@dataclass
class MarketData:
    """Bars of one instrument in time order, with unique timestamps and positive prices."""

    timestamps: np.ndarray  # datetime64[ns], strictly increasing
    open: np.ndarray  # float64, > 0
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray  # float64, >= 0 (zeros when the file has no volume)
    tic: str | None = None
    source: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of bars."""
        return int(len(self.close))

    def slice(self, start: int | None, stop: int | None) -> MarketData:
        """Bars ``start:stop`` (views of the same arrays; warnings are copied)."""
        s = slice(start, stop)
        return dataclasses.replace(
            self, timestamps=self.timestamps[s], open=self.open[s], high=self.high[s],
            low=self.low[s], close=self.close[s], volume=self.volume[s],
            warnings=list(self.warnings))


def resolve_data_path(name: str) -> str:
    """Where the data file ``name`` is: an existing path as is (made absolute); a bare file name
    under ``./data/``, then ``$DQL_DATA_DIR``, then the bundled repository ``data/`` folder.

    ``s3://``, ``gs://`` and ``az://`` URIs are returned unchanged; ``file://`` is stripped.
    A missing file raises :class:`DataFileMissing` (a DataError) listing the places searched.
    """
    try:
        return paths.resolve_data_path(name)
    except paths.DataFileNotFound as exc:
        raise DataFileMissing(str(exc)) from None


MARKET_SUFFIXES = (".csv", ".parquet", ".pq")


def market_files(spec: str) -> list[str] | None:
    """The market files a ``--data_file`` names when it names several: a local folder (its
    ``*.csv`` / ``*.parquet`` files) or a glob (``markets/*.csv``), sorted; None for one file.

    A glob matching nothing and a folder without market files are a DataError.
    """
    import glob
    import os

    if any(c in spec for c in "*?[") and "://" not in spec:
        found = sorted(f for f in glob.glob(os.path.expanduser(spec)) if os.path.isfile(f))
        if not found:
            raise DataFileMissing(f"no file matches {spec}")
        return found
    path = os.path.expanduser(spec)
    if "://" not in spec and os.path.isdir(path):
        found = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if f.lower().endswith(MARKET_SUFFIXES)
                       and os.path.isfile(os.path.join(path, f)))
        if not found:
            raise DataFileMissing(f"folder {spec} holds no .csv or .parquet market files")
        return found
    return None


def market_name(path: str) -> str:
    """A market's short name: its file name without the extension."""
    import os

    return os.path.basename(path.rstrip("/")).split(".")[0] or "market"


def _fmt_count(n: int) -> str:
    return f"{n:,}"


class _Where:
    """Builds the ``file line N, column 'x'`` prefix of error messages."""

    def __init__(self, path: str, parquet: bool, file_rows: np.ndarray | None = None) -> None:
        self.name = Path(path).name
        self.parquet = parquet
        self.file_rows = file_rows  # data row index -> row index in the file (blank lines)

    def row(self, index: int) -> str:
        """Position of data row ``index`` (0-based) as the user sees it in the file."""
        if self.file_rows is not None and 0 <= index < len(self.file_rows):
            index = int(self.file_rows[index])
        return f"row {index + 1}" if self.parquet else f"line {index + 2}"

    def rows(self, count: int) -> str:
        """The span of the first ``count`` data rows, e.g. ``lines 2-6``."""
        first, last = self.row(0).split(), self.row(max(count - 1, 0)).split()
        return f"{first[0]}s {first[1]}-{last[1]}"

    def error(self, index: int | None, column: str | None, message: str) -> DataError:
        parts = [self.name]
        if index is not None:
            parts.append(" " + (self.row(index) if index >= 0 else
                                ("schema" if self.parquet else "line 1")))
        if column is not None:
            parts.append(("," if index is not None else "") + f" column {column!r}")
        return DataError("".join(parts) + ": " + message)


def _more(bad: np.ndarray) -> str:
    extra = int(bad.sum()) - 1
    return f" (and {_fmt_count(extra)} more row{'s' if extra != 1 else ''})" if extra > 0 else ""


def _numeric(series: Any, col: str, where: _Where, *, price: bool,
             warnings: list[str]) -> np.ndarray:
    """A numeric column as float64, or a DataError for the first bad row."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(series.dtype):
        raise where.error(0, col, "holds true/false values, not numbers")
    if pd.api.types.is_numeric_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        raw = None
    else:
        raw = series.astype(str).str.strip()
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    nan = np.isnan(values)
    if nan.any():
        if raw is None:
            empty = nan
            words = np.zeros_like(nan)
        else:
            raw_np = raw.to_numpy(dtype=object)
            empty = nan & (raw_np == "")
            words = nan & np.isin(np.char.lower(raw_np.astype(str)), list(NAN_WORDS))
        text = nan & ~empty & ~words
        if text.any():
            i = int(np.argmax(text))
            assert raw is not None
            raise where.error(i, col, f"non-numeric value {raw.iloc[i]!r}{_more(text)}"
                              " (values must be plain numbers; fix or remove the row)")
        if not price and not words.any():
            # An empty volume is tolerated: counted as zero volume.
            values = np.where(empty, 0.0, values)
            warnings.append(f"empty {col} on {_fmt_count(int(empty.sum()))} rows; set to 0")
        else:
            i = int(np.argmax(nan))
            what = "empty value" if empty[i] else f"NaN value {raw.iloc[i]!r}" if raw is not None \
                else "NaN value"
            noun = "prices" if price else "volumes"
            raise where.error(i, col, f"{what}{_more(nan)} ({noun} must be finite numbers; "
                              "fill or remove the row)")
    inf = np.isinf(values)
    if inf.any():
        i = int(np.argmax(inf))
        raise where.error(i, col, f"infinite value {values[i]}{_more(inf)} "
                          "(values must be finite; fix or remove the row)")
    bad = values <= 0 if price else values < 0
    if bad.any():
        i = int(np.argmax(bad))
        rule = "prices must be > 0" if price else "volumes must be >= 0"
        kind = "non-positive price" if price else "negative volume"
        raise where.error(i, col, f"{kind} {values[i]:g}{_more(bad)} ({rule})")
    return values


def _parse_times(series: Any, col: str, where: _Where) -> np.ndarray:
    """The time column as datetime64[ns] (UTC, naive), or a DataError for the first bad row."""
    import pandas as pd

    if isinstance(series.dtype, pd.DatetimeTZDtype):
        return series.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[ns]")
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        values = series.to_numpy("datetime64[ns]")
        nat = np.isnat(values)
        if nat.any():
            i = int(np.argmax(nat))
            raise where.error(i, col, f"missing time{_more(nat)} (every bar needs a time)")
        return values
    if pd.api.types.is_float_dtype(series.dtype):
        raise where.error(0, col, f"numeric times are not supported ({_TIME_HINT})")
    raw = series.astype(str).str.strip()
    empty = (raw == "").to_numpy()
    if empty.any():
        i = int(np.argmax(empty))
        raise where.error(i, col, f"empty time{_more(empty)} (every bar needs a time)")
    # Probe every format on the first rows, then parse the whole column with the survivors.
    probe = raw.iloc[:64]
    scores = [(int(np.isnat(_to_datetime(probe, fmt)).sum()), i, fmt)
              for i, fmt in enumerate(_TIME_FORMATS)]
    candidates = [fmt for bad, _, fmt in scores if bad == 0]
    complete: list[tuple[str, np.ndarray]] = []
    for fmt in candidates:
        values = _to_datetime(raw, fmt)
        if not np.isnat(values).any():
            if fmt == _ISO:
                return values
            if not any(np.array_equal(values, v) for _, v in complete):
                complete.append((fmt, values))
    if len(complete) == 1:
        return complete[0][1]
    if len(complete) > 1:
        forward = [v for _, v in complete if bool(np.all(np.diff(v) >= np.timedelta64(0)))]
        if len(forward) == 1:
            return forward[0]
        fmts = " or ".join(f for f, _ in complete)
        raise where.error(0, col, f"ambiguous dates such as {raw.iloc[0]!r} (could be {fmts}); "
                          "write them as ISO 8601 (yyyy-mm-dd)")
    # Nothing parses everything: report the first row that the most plausible format rejects.
    best_fmt = (candidates or [min(scores)[2]])[0]
    nat = np.isnat(_to_datetime(raw, best_fmt))
    i = int(np.argmax(nat))
    raise where.error(i, col, f"cannot parse time {raw.iloc[i]!r}{_more(nat)} ({_TIME_HINT})")


def _to_datetime(raw: Any, fmt: str) -> np.ndarray:
    """``raw`` strings parsed with one explicit format (NaT where they do not match)."""
    import pandas as pd

    try:
        if fmt == _ISO:  # offsets allowed: converted to UTC
            parsed = pd.to_datetime(raw, format=fmt, errors="coerce", utc=True).dt.tz_localize(None)
        else:
            parsed = pd.to_datetime(raw, format=fmt, errors="coerce")
    except (ValueError, TypeError, OverflowError):
        return np.full(len(raw), np.datetime64("NaT"), dtype="datetime64[ns]")
    return parsed.to_numpy("datetime64[ns]")


def _read_table(path: str, parquet: bool, where: _Where) -> Any:
    import pandas as pd

    try:
        if parquet:
            df = pd.read_parquet(path)
            if isinstance(df.index, pd.DatetimeIndex) and df.index.name is not None:
                df = df.reset_index()
            return df
        df = pd.read_csv(path, keep_default_na=False, skip_blank_lines=False,
                         encoding="utf-8-sig", low_memory=False)
        if df.shape[1] == 1 and ";" in str(df.columns[0]):
            df = pd.read_csv(path, sep=";", keep_default_na=False, skip_blank_lines=False,
                             encoding="utf-8-sig", low_memory=False)
        return df
    except FileNotFoundError:
        raise DataFileMissing(f"{where.name}: file not found ({path})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise where.error(None, None, f"cannot read file ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); "
                          "check that it is a CSV or Parquet file") from None
    except pd.errors.EmptyDataError:
        raise where.error(None, None, "file is empty; it needs a header line and bars") from None
    except pd.errors.ParserError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else "malformed CSV"
        raise where.error(None, None, f"malformed CSV ({msg}); every line needs the same "
                          "number of fields as the header") from None
    except Exception as exc:  # pyarrow errors on a broken Parquet file, etc.
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise where.error(None, None, f"cannot read file ({type(exc).__name__}: {first}); "
                          "check that it is a CSV or Parquet file") from None


def load_market_data(path_or_name: str, *, min_rows: int = 0) -> MarketData:
    """Load, check and clean a CSV or Parquet file of bars (see the module docstring).

    Errors (DataError, nothing returned): missing column, non-numeric / NaN / infinite / empty /
    non-positive price, unparseable or missing time, time going backwards, several tickers in one
    file, fewer than ``min_rows`` bars after cleaning. Warnings (counted, the bars kept; in
    ``MarketData.warnings``, not logged here): duplicate timestamps (the first bar of each kept),
    high < low, open/close outside [low, high] (adjusted close), zero-range bars, missing volume.
    """
    import pandas as pd

    path = resolve_data_path(path_or_name)
    if path.startswith(URI_SCHEMES):
        raise DataError(f"{path}: storage URIs are read by the engine CLI, which copies the file "
                        "locally first; pass a local path to load_market_data")
    parquet = path.lower().endswith(PARQUET_SUFFIXES)
    where = _Where(path, parquet)
    df = _read_table(path, parquet, where)
    warnings: list[str] = []

    # Columns, matched case-insensitively.
    by_name: dict[str, str] = {}
    for c in df.columns:
        by_name.setdefault(str(c).strip().lower(), c)
    found = ", ".join(str(c) for c in df.columns)
    present = [c for c in TIME_COLUMNS if c in by_name]
    if not present:
        raise where.error(-1, "date", f"missing time column (found: {found}; need one of "
                          "date|time|timestamp|datetime)")
    for c in PRICE_COLUMNS:
        if c not in by_name:
            raise where.error(-1, c, f"missing required column (found: {found}; need "
                              "date, open, high, low, close)")

    # Blank lines (CSV) are dropped; indices below keep file order for line numbers.
    blank = np.zeros(len(df), dtype=bool)
    if not parquet and len(df) and not pd.api.types.is_numeric_dtype(df[by_name["close"]].dtype):
        # A blank line turns every column into text; only then look for all-empty rows.
        blank = np.array(df[by_name["close"]].astype(str).str.strip() == "", dtype=bool)
        for c in df.columns:
            if not blank.any():
                break
            blank[blank] = (df.loc[blank, c].astype(str).str.strip() == "").to_numpy()
    if blank.any():
        keep = ~blank
        tail = len(df) - int(np.argmax(keep[::-1])) if keep.any() else 0
        inner = int(blank[:tail].sum())
        if inner:
            warnings.append(f"skipped {_fmt_count(inner)} blank lines")
        line_of = np.flatnonzero(keep)
        df = df.iloc[line_of]
    else:
        line_of = np.arange(len(df))
    df = df.reset_index(drop=True)

    where = _Where(path, parquet, line_of)
    if len(df) == 0:
        raise where.error(None, None, "no bars (the file has a header but no rows)")

    # Time.
    if "date" in by_name and "time" in by_name and "timestamp" not in by_name \
            and "datetime" not in by_name:
        tcol = f"{by_name['date']}+{by_name['time']}"
        tseries = df[by_name["date"]].astype(str).str.strip() + " " + \
            df[by_name["time"]].astype(str).str.strip()
    else:
        tcol = str(by_name[present[0]])
        tseries = df[by_name[present[0]]]
    ts = _parse_times(tseries, tcol, where)

    # Prices and volume.
    prices = {c: _numeric(df[by_name[c]], str(by_name[c]), where, price=True, warnings=warnings)
              for c in PRICE_COLUMNS}
    if "volume" in by_name:
        volume = _numeric(df[by_name["volume"]], str(by_name["volume"]), where, price=False,
                          warnings=warnings)
    else:
        volume = np.zeros(len(df))
        warnings.append("no volume column; volume set to 0 (volume features will be zero)")

    tic: str | None = None
    if "tic" in by_name:
        tics = df[by_name["tic"]].astype(str).str.strip().to_numpy(dtype=object)
        first = tics[0]
        other = tics != first
        if other.any():
            i = int(np.argmax(other))
            names = sorted({str(t) for t in tics})
            raise where.error(i, str(by_name["tic"]), f"a second ticker {tics[i]!r} after "
                              f"{first!r} ({len(names)} tickers: {', '.join(names[:5])}); "
                              "use one file per ticker")
        tic = str(first) or None

    # Order: time may repeat (dropped below) but never go backwards.
    step = np.diff(ts)
    back = step < np.timedelta64(0)
    if back.any():
        i = int(np.argmax(back)) + 1
        raise where.error(i, tcol, f"time goes backwards ({_ts(ts[i])} after {_ts(ts[i - 1])} "
                          f"on {where.row(i - 1)}){_more(back)}; sort the file by time")
    dup = np.concatenate(([False], step == np.timedelta64(0)))
    if dup.any():
        n_dup = int(dup.sum())
        keep = ~dup
        group = np.cumsum(keep) - 1  # index of the kept bar for every row
        differ = np.zeros(len(ts), dtype=bool)
        for c in PRICE_COLUMNS:
            differ |= prices[c] != prices[c][keep][group]
        note = f" ({_fmt_count(int(differ.sum()))} with different prices)" if differ.any() else ""
        warnings.append(f"dropped {_fmt_count(n_dup)} duplicate timestamps{note}; "
                        "kept the first bar of each")
        ts = ts[keep]
        prices = {c: v[keep] for c, v in prices.items()}
        volume = volume[keep]

    n = len(ts)
    if n < min_rows:
        raise DataError(f"{where.name} {where.rows(len(line_of))}: only {_fmt_count(n)} bars "
                        f"after cleaning, need at least {_fmt_count(min_rows)} (use a longer "
                        "file or a smaller window)")

    o, h, lo, c = (prices[k] for k in PRICE_COLUMNS)
    inverted = h < lo
    if inverted.any():
        warnings.append(f"high < low on {_fmt_count(int(inverted.sum()))} rows; kept")
    top, bottom = np.maximum(h, lo), np.minimum(h, lo)
    for label, v in (("close", c), ("open", o)):
        out = (v < bottom) | (v > top)
        if out.any():
            hint = " (adjusted close?)" if label == "close" else ""
            warnings.append(f"{label} outside [low, high] on {_fmt_count(int(out.sum()))} "
                            f"rows{hint}; kept")
    flat = h == lo
    if flat.any():
        warnings.append(f"{_fmt_count(int(flat.sum()))} zero-range bars (high == low); kept")

    # Own, writable, contiguous arrays (pandas may hand out read-only views of its buffers).
    return MarketData(timestamps=np.array(ts, dtype="datetime64[ns]"), open=np.array(o),
                      high=np.array(h), low=np.array(lo), close=np.array(c),
                      volume=np.array(volume, dtype=np.float64), tic=tic, source=path,
                      warnings=warnings)


def _ts(value: np.datetime64) -> str:
    text = str(np.datetime_as_string(value, unit="s")).replace("T", " ")
    return text[:-9] if text.endswith(" 00:00:00") else text


def split_indices(n: int, train_frac: float, val_frac: float) -> tuple[slice, slice, slice]:
    """Chronological train / validation / test slices of ``n`` bars (e.g. 0.65 / 0.20 / rest).

    ``0 < train_frac``, ``0 <= val_frac`` and ``train_frac + val_frac < 1``; the test split is the
    rest. Boundaries are rounded down. Raises ValueError for bad fractions, or when ``n`` is too
    small for every split (validation may be empty only when ``val_frac == 0``).
    """
    if not (0.0 < train_frac < 1.0):
        raise ValueError(f"train_frac must be in (0, 1), got {train_frac}")
    if not (0.0 <= val_frac < 1.0):
        raise ValueError(f"val_frac must be in [0, 1), got {val_frac}")
    if train_frac + val_frac >= 1.0:
        raise ValueError(f"train_frac + val_frac must be < 1 to leave a test split, got "
                         f"{train_frac} + {val_frac} = {train_frac + val_frac:g}")
    n_train = int(n * train_frac)
    n_val = int(n * val_frac)
    if n_train < 1 or (val_frac > 0 and n_val < 1) or n - n_train - n_val < 1:
        raise ValueError(f"{n} bars are too few for a {train_frac:g}/{val_frac:g}/"
                         f"{1 - train_frac - val_frac:g} split")
    return (slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, n))


_DAY_NS = 86_400 * 10**9
_YEAR_DAYS = 365.2425
DEFAULT_TRADING_DAYS = 260.0


def bars_per_year(timestamps: Any) -> float:
    """Bars per year, inferred from the data's own calendar (for annualising returns and risk).

    Method:

    1. Duplicates are ignored; ``spacing`` = median gap between bars; ``span`` = last - first +
       spacing (the last bar covers one gap).
    2. Daily or coarser bars (spacing >= 20 h), or any data spanning at least 28 days: the bars
       actually present per calendar year, ``n / (span / 365.2425 days)``. This follows the
       market's own calendar: GOOGL daily gives ~252, EURUSD daily ~260, crypto daily ~365,
       EURUSD hourly (24 h x 5 days) ~6,200-6,300; weekends, nights and holidays count as they
       occur.
    3. Intraday data covering less than 28 days cannot show its weekly calendar, so: bars per day
       = the median count per calendar date over the dates strictly inside the sample (when there
       are at least three dates; otherwise ``24 h / spacing``, i.e. round-the-clock trading),
       times 260 trading days a year (a 5-day week, as FX; an assumption for such short samples).
       One minute FX bars of one day give 1,440 x 260 = 374,400.

    Never a fixed 252 for intraday bars. Raises ValueError for fewer than two distinct times.
    """
    ts = np.unique(np.asarray(timestamps, dtype="datetime64[ns]"))
    if len(ts) < 2:
        raise ValueError("need at least two distinct timestamps to infer bars per year")
    ns = ts.astype(np.int64)
    spacing = float(np.median(np.diff(ns)))
    span_days = (float(ns[-1] - ns[0]) + spacing) / _DAY_NS
    n = len(ts)
    if spacing >= 20 * 3600 * 1e9 or span_days >= 28.0:
        return n / (span_days / _YEAR_DAYS)
    days = ns // _DAY_NS
    uniq, counts = np.unique(days, return_counts=True)
    if len(uniq) >= 3:
        per_day = float(np.median(counts[1:-1]))
    else:
        per_day = _DAY_NS / spacing
    return per_day * DEFAULT_TRADING_DAYS

