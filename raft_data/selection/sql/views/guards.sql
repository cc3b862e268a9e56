-- Guards before ranking. Each marks the rows it drops in dropped_by (the first guard that drops a row names it);
-- later guards only look at rows still standing, so partitions include `dropped_by is null`.
-- Order: pass_band, truncated, empty, duplicate, constant, margin. Each is switched by a variable from settings.sql.
--   guarded:            every pool row, with dropped_by (null = kept)
--   guarded_candidates: the rows no guard dropped; Python adds the user's where/qualify as `candidates`

create or replace temp view guarded as
with scored_rows as (
    select * from scored
),

pass_band_guard as (
    -- checkable answers: a prompt every sample solved, or none did, teaches nothing; its pass rate (over all its
    -- samples of the round) must lie in [min_pass_rate, max_pass_rate]
    select
        *,
        case
            when (getvariable('min_pass_rate') > 0 or getvariable('max_pass_rate') < 1)
                and coalesce(avg(correct) over (partition by round, prompt_id), 0)
                not between getvariable('min_pass_rate') and getvariable('max_pass_rate')
                then 'pass_band'
        end as dropped_by
    from scored_rows
),

truncated_guard as (
    select * replace (
        coalesce(dropped_by, case when getvariable('drop_truncated') and truncated then 'truncated' end)
            as dropped_by
    )
    from pass_band_guard
),

empty_guard as (
    select * replace (
        coalesce(
            dropped_by,
            case when getvariable('drop_empty') and regexp_full_match(completion, '\s*') then 'empty' end
        ) as dropped_by
    )
    from truncated_guard
),

duplicate_guard as (
    -- the same completion twice for one prompt: the lowest (round, sample_idx) stays
    select * replace (
        coalesce(
            dropped_by,
            case
                when getvariable('drop_duplicates')
                    and row_number() over (
                        partition by prompt_id, dropped_by is null, completion order by round, sample_idx
                    ) > 1
                    then 'duplicate'
            end
        ) as dropped_by
    )
    from empty_guard
),

constant_guard as (
    -- nothing to learn from a prompt whose samples all score the same
    select * replace (
        coalesce(
            dropped_by,
            case
                when getvariable('drop_constant')
                    and min(rank_key) over (partition by prompt_id, dropped_by is null)
                    = max(rank_key) over (partition by prompt_id, dropped_by is null)
                    then 'constant'
            end
        ) as dropped_by
    )
    from duplicate_guard
),

margin_guard as (
    -- best minus second best below min_margin: the ranking is not sure enough. A prompt with a single
    -- remaining sample has no runner-up and stays.
    select * replace (
        coalesce(
            dropped_by,
            case
                when getvariable('min_margin') > 0
                    and max(rank_key) over (partition by prompt_id, dropped_by is null)
                    - nth_value(rank_key, 2) over (
                        partition by prompt_id, dropped_by is null
                        order by rank_key desc
                        rows between unbounded preceding and unbounded following
                    ) < getvariable('min_margin')
                    then 'margin'
            end
        ) as dropped_by
    )
    from constant_guard
),

final as (
    select * from margin_guard
)

select * from final;

create or replace temp view guarded_candidates as
select * exclude (dropped_by)
from guarded
where dropped_by is null;
