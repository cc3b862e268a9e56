-- Rows each guard dropped, for the manifest and `raft-data inspect`. Reads the view guarded.

with guarded_rows as (
    select dropped_by from guarded
),

final as (
    select dropped_by as guard, count(*) as n_rows
    from guarded_rows
    where dropped_by is not null
    group by dropped_by
)

select * from final
order by guard
