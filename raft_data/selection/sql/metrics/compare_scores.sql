-- compare_scores: how two scorings of the same samples agree (`raft-data compare-scores`). One row: the samples
-- both scored (rows with an error on either side are left out), Pearson and Spearman correlation of the rewards
-- (Spearman with tied values given their average rank), and, when both sides are binary (every reward 0 or 1),
-- the agreement rate and the confusion table.
-- Reads the views a_scores and b_scores (prompt_id, sample_idx, reward, error).

with a_rows as (
    select prompt_id, sample_idx, reward as a from a_scores where error is null and reward is not null
),

b_rows as (
    select prompt_id, sample_idx, reward as b from b_scores where error is null and reward is not null
),

paired as (
    select a_rows.prompt_id, a_rows.sample_idx, a_rows.a, b_rows.b
    from a_rows
    inner join b_rows using (prompt_id, sample_idx)
),

ranked as (
    -- average rank of tied values: halfway between the lowest and the highest rank the tie spans
    select
        a,
        b,
        (rank() over (order by a) + count(*) over () - rank() over (order by a desc) + 1) / 2 as a_rank,
        (rank() over (order by b) + count(*) over () - rank() over (order by b desc) + 1) / 2 as b_rank
    from paired
),

final as (
    select
        (select count(*) from a_scores) as n_a,
        (select count(*) from b_scores) as n_b,
        count(*) as n_paired,
        corr(a, b) as pearson,
        corr(a_rank, b_rank) as spearman,
        bool_and(a in (0, 1)) and bool_and(b in (0, 1)) as binary,
        avg((a = b)::integer) as agreement,
        count_if(a = 1 and b = 1)::bigint as a1_b1,
        count_if(a = 1 and b = 0)::bigint as a1_b0,
        count_if(a = 0 and b = 1)::bigint as a0_b1,
        count_if(a = 0 and b = 0)::bigint as a0_b0
    from ranked
)

select * from final
