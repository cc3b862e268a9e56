-- Reward quantiles of a round, for `raft-data inspect`: all samples of the round, the best of K per prompt
-- (what best_per_prompt would keep without guards) and the rows in selected/. $round is the round.
-- Each set is reduced on its own, by one aggregate with one quantile state for the five quantiles: the memory it
-- takes is one copy of the round's rewards, whatever else the query does.

with round_scores as (
    select prompt_id, reward from scores where round = $round
),

best_of_k as (
    select max(reward) as reward from round_scores group by prompt_id
),

selected_rows as (
    select reward from selected
),

reward_sets as (
    -- an aggregate without group by has one row even over no rows: a set with nothing in it still has its line
    select
        1 as position,
        'all samples' as rows,
        count(reward) as n,
        min(reward) as min,
        quantile_cont(reward, [0.1, 0.25, 0.5, 0.75, 0.9]) as q,
        max(reward) as max,
        avg(reward) as mean
    from round_scores
    union all
    select
        2 as position,
        'best of K' as rows,
        count(reward) as n,
        min(reward) as min,
        quantile_cont(reward, [0.1, 0.25, 0.5, 0.75, 0.9]) as q,
        max(reward) as max,
        avg(reward) as mean
    from best_of_k
    union all
    select
        3 as position,
        'selected' as rows,
        count(reward) as n,
        min(reward) as min,
        quantile_cont(reward, [0.1, 0.25, 0.5, 0.75, 0.9]) as q,
        max(reward) as max,
        avg(reward) as mean
    from selected_rows
),

final as (
    select
        position,
        rows,
        n,
        min,
        q[1] as p10,
        q[2] as p25,
        q[3] as p50,
        q[4] as p75,
        q[5] as p90,
        max,
        mean
    from reward_sets
)

select * exclude (position) from final
order by position
