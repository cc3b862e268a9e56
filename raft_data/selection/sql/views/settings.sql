-- The select config as DuckDB variables. Views cannot hold prepared parameters, so each value is bound here
-- as a parameter ($name) and the views read it back with getvariable('name'). DuckDB folds getvariable into a
-- constant, so a guard that is off costs nothing (its window functions are pruned from the plan).

set variable rank_by = $rank_by;
set variable pooled = $pooled;
set variable drop_truncated = $drop_truncated;
set variable drop_empty = $drop_empty;
set variable drop_duplicates = $drop_duplicates;
set variable drop_constant = $drop_constant;
set variable min_margin = $min_margin;
set variable min_pass_rate = $min_pass_rate;
set variable max_pass_rate = $max_pass_rate;
