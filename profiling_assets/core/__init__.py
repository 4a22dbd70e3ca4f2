"""Pure logic: no Dagster imports; every function testable with plain data."""
