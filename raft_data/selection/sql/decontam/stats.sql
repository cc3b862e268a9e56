-- The decontamination line of a round, for selected/manifest.json: the round's scored rows checked, those sharing an
-- n-gram with an evaluation text, the round's prompts whose text alone shares one, and the distinct evaluation
-- n-grams. Reads scored, contaminated_rows and eval_ngrams (decontam/guards.sql); $round is the round.

with round_rows as (
    select prompt_id, prompt from scored where round = $round
),

contaminated as (
    select prompt_id from contaminated_rows where round = $round
),

prompt_grams as (
    select prompt_id, unnest(word_ngrams(text_words(prompt), $n)) as gram
    from (select distinct prompt_id, prompt from round_rows)
),

contaminated_prompts as (
    select distinct prompt_id from prompt_grams where hash(gram) in (select gram_hash from eval_ngrams)
),

final as (
    select
        (select count(*) from round_rows) as checked_rows,
        (select count(*) from contaminated) as contaminated_rows,
        (select count(*) from contaminated_prompts) as contaminated_prompts,
        (select count(*) from eval_ngrams) as eval_ngrams
)

select * from final
