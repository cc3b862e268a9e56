-- Reward quantiles of a round, for `raft-data inspect`: all samples of the round, the best of K per prompt
-- (what best_per_prompt would keep without guards) and the rows in selected/. $round is the round.

with round_scores as (
    select prompt_id, reward from scores where round = $round
),

all_samples as (
    select 1 as position, 'all samples' as rows, reward from round_scores
),

best_of_k as (
    select 2 as position, 'best of K' as rows, max(reward) as reward from round_scores group by prompt_id
),

selected_rows as (
    select 3 as position, 'selected' as rows, reward from selected
),

set_names as (
    select * from (values (1, 'all samples'), (2, 'best of K'), (3, 'selected')) as names (position, rows)
),

reward_sets as (
    select * from all_samples
    union all
    select * from best_of_k
    union all
    select * from selected_rows
),

final as (
    select
        position,
        rows,
        count(reward) as n,
        min(reward) as min,
        quantile_cont(reward, 0.1) as p10,
        quantile_cont(reward, 0.25) as p25,
        quantile_cont(reward, 0.5) as p50,
        quantile_cont(reward, 0.75) as p75,
        quantile_cont(reward, 0.9) as p90,
        max(reward) as max,
        avg(reward) as mean
    from set_names
    left join reward_sets using (position, rows)
    group by position, rows
)

select * exclude (position) from final
order by position
