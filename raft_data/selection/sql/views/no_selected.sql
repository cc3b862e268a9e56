-- The view selected before the select stage has run: no rows, the columns of selected/.

create or replace temp view selected as
select prompt_id, sample_idx, prompt, completion, reward, n_tokens, truncated, source, round
from scored
where false;
