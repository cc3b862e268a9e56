-- round_rewards: the reward of a round's own data, three ways. Mean of all samples, mean of the best of K
-- per prompt (what best_per_prompt selection could reach), and mean of the selected set (what SFT trained on).
-- Reads the views raw_scores and raw_selected.

with scores as (
    select prompt_id, sample_idx, reward
    from raw_scores
),

selected as (
    select prompt_id, reward
    from raw_selected
),

best_of_k as (
    select prompt_id, max(reward) as reward
    from scores
    group by prompt_id
),

final as (
    select
        (select avg(reward) from scores) as reward_all,
        (select avg(reward) from best_of_k) as reward_best_of_k,
        (select avg(reward) from selected) as reward_selected,
        (select count(*) from scores) as n_samples,
        (select count(*) from selected) as n_selected
)

select * from final
