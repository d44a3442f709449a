"""Statements whose SQL is generated once per shape, for the hot paths.

Peewee renders SQL afresh on every execution, and on Baton's hot paths that
rendering costs more than the database work. These helpers render each
statement shape once per database and afterwards only bind new parameters;
results still come back as model instances through peewee's own cursor
wrappers.
"""
from __future__ import annotations

from typing import Callable

from .base import db

_MARK = "\x00baton-param-{}\x00"
_sql_cache: dict[tuple, object] = {}


class Prepared:
    """A statement built by `build(*placeholders)` and rendered once per
    database; `statement(*args)` gives its SQL and the parameters with `args`
    bound (values as the database takes them, as peewee would pass them)."""

    def __init__(self, build: Callable):
        self._build = build

    def _entry(self, database, count: int):
        key = (id(database), id(self), count)
        entry = _sql_cache.get(key)
        if entry is None:
            marks = [_MARK.format(i) for i in range(count)]
            query = self._build(*marks)
            sql, params = query.sql()
            slots = [(i, marks.index(p)) for i, p in enumerate(params) if isinstance(p, str) and p in marks]
            entry = _sql_cache[key] = (query, sql, list(params), slots)
        return entry

    def statement(self, *args) -> tuple[str, list]:
        _, sql, params, slots = self._entry(db.obj, len(args))
        bound = list(params)
        for position, arg_index in slots:
            bound[position] = args[arg_index]
        return sql, bound


class PreparedSelect(Prepared):
    """A prepared SELECT; `rows(*args)` runs it and gives model instances."""

    def rows(self, *args) -> list:
        database = db.obj
        query = self._entry(database, len(args))[0]
        cursor = database.execute_sql(*self.statement(*args))
        return list(query._get_cursor_wrapper(cursor))

    def first(self, *args):
        rows = self.rows(*args)
        return rows[0] if rows else None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def insert_statement(row) -> tuple[str, list]:
    """INSERT of an unsaved model instance (every field it carries)."""
    model = type(row)
    names = tuple(name for name in row.__data__ if name in model._meta.fields)
    key = (id(db.obj), model, names)
    sql = _sql_cache.get(key)
    if sql is None:
        fields = [model._meta.fields[n] for n in names]
        sql = _sql_cache[key] = (
            f"INSERT INTO {_quote(model._meta.table_name)} ({', '.join(_quote(f.column_name) for f in fields)}) "
            f"VALUES ({', '.join([db.obj.param] * len(fields))})")
    return sql, [model._meta.fields[n].db_value(row.__data__[n]) for n in names]


def update_statement(model, changes: dict, where: dict, increment: str | None = None) -> tuple[str, list]:
    """UPDATE … SET changes [, increment = increment + 1] WHERE every `where`
    field equals its value (None: IS NULL)."""
    change_names = tuple(changes)
    where_names = tuple((name, where[name] is None) for name in where)
    key = (id(db.obj), model, change_names, where_names, increment)
    sql = _sql_cache.get(key)
    fields = model._meta.fields
    if sql is None:
        param = db.obj.param
        sets = [f"{_quote(fields[n].column_name)} = {param}" for n in change_names]
        if increment:
            column = _quote(fields[increment].column_name)
            sets.append(f"{column} = {column} + 1")
        conditions = [f"{_quote(fields[n].column_name)} IS NULL" if is_null
                      else f"{_quote(fields[n].column_name)} = {param}" for n, is_null in where_names]
        sql = _sql_cache[key] = (f"UPDATE {_quote(model._meta.table_name)} SET {', '.join(sets)} "
                                 f"WHERE {' AND '.join(conditions)}")
    params = [fields[n].db_value(changes[n]) for n in change_names]
    params += [fields[n].db_value(where[n]) for n, is_null in where_names if not is_null]
    return sql, params
