(function(){
  function key(td){var v=td.getAttribute('data-v');if(v!==null&&v!==''){return parseFloat(v);}
    var t=td.textContent.trim();var f=parseFloat(t);return isNaN(f)?t.toLowerCase():f;}
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('th').forEach(function(th,col){
      th.addEventListener('click',function(){
        var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
        var asc=th.getAttribute('data-asc')!=='1';th.setAttribute('data-asc',asc?'1':'0');
        rows.sort(function(a,b){var x=key(a.cells[col]),y=key(b.cells[col]);
          if(typeof x!==typeof y){return typeof x==='number'?-1:1;}
          return (x<y?-1:x>y?1:0)*(asc?1:-1);});
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  window.addEventListener('load',function(){
    var imgs=document.querySelectorAll('img');var bad=0;
    imgs.forEach(function(img){var ok=img.complete&&img.naturalWidth>0;img.setAttribute('data-ok',ok?'1':'0');
      if(!ok){bad++;console.error('report: image did not load: '+img.alt);}});
    document.body.setAttribute('data-images',imgs.length+' loaded='+(imgs.length-bad));
  });
})();
