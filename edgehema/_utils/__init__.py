"""Helpers shared by several stages and owned by none: row blocks of arrays (``arrays``), SQLite
opened the same way everywhere (``sqlite``), TOML reading (``toml``), log lines limited in rate
(``log_limit``). They import nothing of edgehema but its exceptions."""
